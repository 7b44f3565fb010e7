"""Authentication and authorization plugins (OIDC, RBAC, OPA) land here."""
