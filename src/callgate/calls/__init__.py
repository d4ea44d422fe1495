"""Call lifecycle, registry, webhook delivery and the call-control verbs behind the REST API."""
