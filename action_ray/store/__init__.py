"""The Zarr v3 volume store shared by ingest (writer) and the data layer (reader).

See docs/store.md for the layout, the completion marker and the chunking/codec choice.
"""

from action_ray.store.schema import CaseInfo, CaseMeta
from action_ray.store.store import VolumeStore, create_store, open_store

__all__ = ["CaseInfo", "CaseMeta", "VolumeStore", "create_store", "open_store"]
