"""Model adapters by role: LLM, TTS, ASR, emotion check and speech units."""
