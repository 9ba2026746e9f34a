"""The model bundle: what training publishes and serving loads, without torch on either read path."""
