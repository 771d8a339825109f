"""The contracts between ringrl's parts: group schema, codec, streams, config, metrics."""
