// Package deploy holds kvh's Kubernetes manifests (daemonset/: a kustomize
// base and the observe and enforce overlays) and the tests that hold them,
// and the repository's Dockerfile.cuda, to the rules the agent needs: every
// overlay rendered with kustomize's own library and decoded strictly into
// the Kubernetes and prometheus-operator types; capabilities, probes,
// limits, mounts and selectors checked; every agent argument a real flag of
// the agent built from this tree; every metric an alert or the dashboard
// names one the agent exports; every build step of the image a Makefile
// target CI runs.
//
// A module of its own (go.mod here) so that the agent's module does not
// depend on kustomize and the Kubernetes API types; make test runs it.
package deploy
