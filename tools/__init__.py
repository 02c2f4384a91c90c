"""Helpers of the documentation site: MkDocs hooks, a griffe extension, pictures on executed
pages and the browser check (see mkdocs.yml)."""
