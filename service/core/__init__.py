"""What every layer uses and nothing here depends on: settings, errors (and their texts), metrics, API keys,
deadlines, the `Job` record, and the request and response schemas."""
