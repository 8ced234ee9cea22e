"""The compliance side of imagegate: audit queries, the review queue and the `/admin/` page."""

from .routes import add_admin_routes

__all__ = ["add_admin_routes"]
