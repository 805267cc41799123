"""Files: reading images and labels, writing outputs, lazy volumes, the model file, atomic writes."""
