"""After prediction: object counts and uncertainty."""
