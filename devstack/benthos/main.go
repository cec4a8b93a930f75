// A Benthos v4 build with only what the peer benchmark uses: the core processors (Bloblang),
// the kafka_franz input and the opensearch output. Benthos's own guide for custom builds: import
// the component packages and call service.RunCLI.
package main

import (
	"context"

	_ "github.com/benthosdev/benthos/v4/public/components/kafka"
	_ "github.com/benthosdev/benthos/v4/public/components/opensearch"
	_ "github.com/benthosdev/benthos/v4/public/components/prometheus"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	"github.com/benthosdev/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
