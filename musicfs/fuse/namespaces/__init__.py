"""The kinds of directory in the mount, one namespace each, and the router choosing among them."""

from .base import Namespace, OpenFile, Reply, SpecialNamespace
from .collections import CollectionsNamespace
from .covers import CoverNamespace
from .hidden import HiddenNamespace
from .offline import OfflineNamespace
from .raw import RawNamespace
from .results import ResultDirs
from .router import Router
from .search import SearchNamespace
from .tree import TreeNamespace

__all__ = ["CollectionsNamespace", "CoverNamespace", "HiddenNamespace", "Namespace", "OfflineNamespace", "OpenFile", "RawNamespace", "Reply",
           "ResultDirs", "Router", "SearchNamespace", "SpecialNamespace", "TreeNamespace"]
