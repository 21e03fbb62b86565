"""Who may connect: client authentication (passwords from a secret of their own, TLS client
certificates) and client-side TLS, shared by both engines' client sessions."""
