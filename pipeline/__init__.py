"""opens2s-data: empathetic spoken-dialogue training data for speech-to-speech models."""

__version__ = "0.1.0"
