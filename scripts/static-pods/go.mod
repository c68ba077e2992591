// cplb-static-pods: the project's own static-pod runner for nodes without a kubelet (see main.go).
module incus-cplb/static-pods

go 1.26.0

require sigs.k8s.io/yaml v1.6.0

require go.yaml.in/yaml/v2 v2.4.2 // indirect
