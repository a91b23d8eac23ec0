"""The InstantID path (public weights): InstantID's IdentityNet + IP-Adapter loaded as RealisID's local branch
(`model`), and its identity attention restricted to each face's region (`attention`)."""
