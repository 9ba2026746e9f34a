"""The prediction log (what was answered), feedback (the labels that arrive later) and live quality per version."""
