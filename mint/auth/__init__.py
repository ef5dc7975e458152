"""Who may do what: bearer tokens mapped to a tenant and roles (a capability; no HTTP in here)."""
