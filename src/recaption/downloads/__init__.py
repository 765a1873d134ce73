"""`recap download`: URL metadata -> verified image shards in img2dataset's layout."""

from .config import DownloadConfig
from .downloader import DownloadSummary, choose_columns, download

__all__ = ["DownloadConfig", "DownloadSummary", "choose_columns", "download"]
