"""The bundled OpenS2S-style training module: model, Parquet data, trainer, streaming generation."""
