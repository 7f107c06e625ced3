// The device benchmark app: launched by `xcrun devicectl device process launch ... --mbv3-model
// Documents/X.mlpackage --mbv3-out Documents/result.json`, it runs the benchmark off the main
// thread, writes the JSON, shows a one-line status and exits.
import SwiftUI

@main
struct MBV3BenchApp: App {
    @State private var status = "waiting for --mbv3-model / --mbv3-out launch arguments"

    var body: some Scene {
        WindowGroup {
            Text(status)
                .padding()
                .task {
                    guard let config = BenchConfig.from(arguments: CommandLine.arguments,
                                                        environment: ProcessInfo.processInfo.environment) else { return }
                    status = "benchmarking \(config.modelURL.lastPathComponent)…"
                    let doc = await Task.detached(priority: .userInitiated) { Benchmark.run(config) }.value
                    status = (doc["error"] as? String) ?? "done: \(config.outURL.lastPathComponent)"
                    exit(0)
                }
        }
    }
}
