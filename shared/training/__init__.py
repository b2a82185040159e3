"""Local training loops used by the ClientApp and the centralized baseline alike."""
