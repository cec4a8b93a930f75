//! Prints the MessagePipeline CustomResourceDefinition as YAML.
//!
//! `cargo run -p messagepipeline-crd --bin crdgen > crds/messagepipeline.yaml` (and the same into
//! `charts/message-pipeline-operator/crds/`); a test fails while either copy is stale.

fn main() {
    print!("{}", messagepipeline_crd::crd_yaml());
}
