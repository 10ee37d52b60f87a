"""migtree-example: a template migtree plugin (see docs/writing-a-plugin.md)."""
