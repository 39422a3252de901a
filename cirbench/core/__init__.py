"""The core data types, metrics, results and on-disk formats: what every flow shares."""
