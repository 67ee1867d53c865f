"""The machine and what it is made of: proposals, networks, standardisation, losses, inference."""
