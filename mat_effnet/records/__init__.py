"""The on-disk record format: schema, shard index, dataset metadata, integrity.

Owns: `schema` (the records, writer and reader side by side), `shard_index`
(the byte index beside each shard), `metadata` (``mat_effnet_meta.json`` and
TFDS's files) and `integrity` (sizes, checksums, the quick check and verify).
May import: `mat_effnet.common`, `mat_effnet.ops`.

The schema, index and metadata functions are re-exported here, so that a
caller writes ``records.write_shard``; `integrity` is imported by name.
"""

from mat_effnet.records.schema import (  # noqa: F401
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    META_FILENAME,
    FILENAME_TEMPLATE,
    VIDEO_ID,
    LABEL,
    CLASS_NAME,
    NUM_FRAMES,
    FPS,
    HEIGHT,
    WIDTH,
    CHUNK_INDEX,
    FRAME_OFFSET,
    RGB,
    FLOW_X,
    FLOW_Y,
    RGB_BYTES,
    FLOW_BYTES,
    FRAMING_BYTES,
    VideoRecord,
    serialize,
    serialize_group,
    framed_size,
    write_videos,
    write_shard,
    feature_spec,
    parse,
    parse_numpy,
    header_spec,
    Group,
    read_groups,
    read_shard,
)
from mat_effnet.records.shard_index import (  # noqa: F401
    INDEX_SUFFIX,
    MetadataError,
    index_path,
    write_index,
    read_index,
)
from mat_effnet.records.metadata import (  # noqa: F401
    shard_filename,
    tfds_features,
    write_tfds_metadata,
    write_metadata,
    read_metadata,
    split_files,
)
