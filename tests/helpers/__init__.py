"""Test helpers: tiny random models saved in each family's layout, tiny diffusers pipelines, a loopback
chat-completions server. Not part of the package: plugin authors get cirbench.testing (the conformance
kit)."""
