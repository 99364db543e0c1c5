//! Cluster linking: mirror topics that keep their source's partitions and offsets.

pub mod records;
