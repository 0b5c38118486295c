"""Base models: the embedded tiny default and loading any from_pretrained-compatible model."""
