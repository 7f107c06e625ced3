// Simulator runs: `xcodebuild test` passes TEST_RUNNER_MBV3_MODEL / _OUT / _ITERS / _WARMUP /
// _ROUNDS / _UNITS, which reach this process as MBV3_*; the simulator writes to the Mac's disk.
import XCTest
@testable import MBV3Bench

final class BenchmarkTests: XCTestCase {
    func testBenchmark() throws {
        let env = ProcessInfo.processInfo.environment
        guard let config = BenchConfig.from(arguments: [], environment: env) else {
            throw XCTSkip("set TEST_RUNNER_MBV3_MODEL and TEST_RUNNER_MBV3_OUT to run the benchmark")
        }
        let doc = Benchmark.run(config)
        XCTAssertTrue(doc["error"] is NSNull, "\(doc["error"] ?? "")")
        XCTAssertTrue(FileManager.default.fileExists(atPath: config.outURL.path))
    }

    func testConfigFromLaunchArguments() {
        let config = BenchConfig.from(arguments: ["app", "--mbv3-model", "/m.mlpackage", "--mbv3-out", "/o.json",
                                                  "--mbv3-iters", "7", "--mbv3-units", "cpuOnly,all"],
                                      environment: [:])
        XCTAssertEqual(config?.iterations, 7)
        XCTAssertEqual(config?.computeUnits, ["cpuOnly", "all"])
        XCTAssertEqual(config?.modelURL.path, "/m.mlpackage")
    }
}
