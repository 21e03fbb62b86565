"""MySQL and MariaDB: client sessions, upstream connections and the engine descriptor."""
