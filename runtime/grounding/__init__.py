"""Grounding on the device: ``Grounder`` (prepare -> encode -> match), its result types, regions, tracking."""
