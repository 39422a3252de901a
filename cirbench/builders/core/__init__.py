"""What every build pipeline shares: the Pipeline interface and its registry, work directories and units,
config checks, image bytes, data-card and contact-sheet pieces. Nothing here imports torch."""
