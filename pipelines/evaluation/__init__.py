"""``pacs-annotator evaluate``: how good the configured pipelines are on a site's own data."""
