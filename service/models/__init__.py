"""The models a server knows: the registry (every version, loaded and verified, or refused with its reason),
hot reload, and model control (who decides what is served, and what an operator asked for)."""
