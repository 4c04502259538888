"""Text for calibration and evaluation: named datasets, local files and self-generated text, cut into token
windows."""
