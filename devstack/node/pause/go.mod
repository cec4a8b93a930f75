// The rig's pause image program (devstack/services/node.sh): nothing can be pulled here, not
// even registry.k8s.io/pause, so the node's sandbox image is built from this.
module messagepipeline.local/devstack/pause

go 1.24.0
