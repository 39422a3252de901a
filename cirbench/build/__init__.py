"""Build flows: stages that turn sources into a native cirbench dataset."""
