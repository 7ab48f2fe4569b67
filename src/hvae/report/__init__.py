"""Pictures and reports: image grids for ``hvae sample``, the HTML page of ``hvae report``."""

from hvae.report.html import write_report
from hvae.report.images import make_grid, png_data_uri, save_grid, to_images

__all__ = ["make_grid", "png_data_uri", "save_grid", "to_images", "write_report"]
