// The Pulumi Kubernetes provider plugin (pulumi-resource-kubernetes), built from Go modules.
//
// Upstream's main package embeds two files its Makefile generates at build time; they are not in the module.
// scripts/setup writes them beside this file (embed.py: schema.json with the version set, and the compacted
// terraform-mapping.json, from the pinned provider module) and then builds this package.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
