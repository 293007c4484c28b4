"""Checks of issue 18 that need GPUs (none on the CI machine); see README.md here."""
