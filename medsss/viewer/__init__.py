"""A self-contained HTML page to browse stored search trees (``stage=view``)."""

from medsss.viewer.html import ViewerError, ViewerRun, load_run, render_viewer, viewer_data

__all__ = ["ViewerError", "ViewerRun", "load_run", "render_viewer", "viewer_data"]
