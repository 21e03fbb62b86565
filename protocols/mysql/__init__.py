"""MySQL / MariaDB client/server protocol (4.1+), sans-IO."""
