"""Retrieval methods built from components: cached artifacts, fusion as data, and the methods themselves."""
