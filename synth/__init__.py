"""Synthetic word-image engine: fonts, vocabulary, rendering, backgrounds and corruptions."""
