"""Built-in metrics; each module registers its metrics on import."""
