"""The stages of a run on Ray: encode (Ray Data actors), cluster (faiss), implicit and explicit training
(Ray Train + DeepSpeed on streams of the store), pseudo-labelling and inference (Ray Data), the report;
with what they share: streams, the training plumbing, resource sizing, the watchdog, metrics."""
