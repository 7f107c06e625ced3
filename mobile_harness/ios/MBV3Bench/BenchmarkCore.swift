// Times a Core ML model per compute unit and writes one JSON document (schema mbv3-ios-bench/1).
// Shared by the app (device runs, via devicectl) and the XCTest (simulator runs, via xcodebuild).
// The harness side is mobile_harness/targets/ios.py; keep the JSON keys in step with it.
import CoreML
import Foundation

public struct BenchConfig {
    public var modelURL: URL
    public var outURL: URL
    public var iterations = 50
    public var warmup = 5
    public var rounds = 3
    public var computeUnits = ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]

    public init(modelURL: URL, outURL: URL) {
        self.modelURL = modelURL
        self.outURL = outURL
    }

    /// From "--mbv3-model PATH --mbv3-out PATH ..." (app launch arguments) or MBV3_* variables
    /// (the XCTest, which xcodebuild gives TEST_RUNNER_MBV3_* as MBV3_*). Relative paths are
    /// inside the app's container home (devicectl copies into Documents/).
    public static func from(arguments: [String], environment: [String: String]) -> BenchConfig? {
        var values: [String: String] = [:]
        for (key, value) in environment where key.hasPrefix("MBV3_") {
            values[String(key.dropFirst(5)).lowercased()] = value
        }
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a.hasPrefix("--mbv3-"), i + 1 < arguments.count {
                values[String(a.dropFirst(7))] = arguments[i + 1]
                i += 1
            }
            i += 1
        }
        guard let model = values["model"], let out = values["out"] else { return nil }
        func url(_ path: String) -> URL {
            path.hasPrefix("/") ? URL(fileURLWithPath: path)
                : URL(fileURLWithPath: NSHomeDirectory()).appendingPathComponent(path)
        }
        var config = BenchConfig(modelURL: url(model), outURL: url(out))
        if let v = values["iters"].flatMap(Int.init) { config.iterations = max(1, v) }
        if let v = values["warmup"].flatMap(Int.init) { config.warmup = max(0, v) }
        if let v = values["rounds"].flatMap(Int.init) { config.rounds = max(1, v) }
        if let v = values["units"] { config.computeUnits = v.split(separator: ",").map(String.init) }
        return config
    }
}

public enum Benchmark {
    static func computeUnits(_ name: String) -> MLComputeUnits? {
        switch name {
        case "cpuOnly": return .cpuOnly
        case "cpuAndGPU": return .cpuAndGPU
        case "cpuAndNeuralEngine": return .cpuAndNeuralEngine
        case "all": return .all
        default: return nil
        }
    }

    static func nowMs() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e6 }

    static func thermalState() -> String {
        switch ProcessInfo.processInfo.thermalState {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "unknown"
        }
    }

    static func machine() -> String {
        var info = utsname()
        uname(&info)
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }

    /// The native runner's deterministic input: element j of input i = ((j*7919 + 13*i) % 255) / 127.5 - 1.
    static func syntheticInputs(_ description: MLModelDescription) throws -> MLFeatureProvider {
        var features: [String: MLFeatureValue] = [:]
        for (i, (name, desc)) in description.inputDescriptionsByName.sorted(by: { $0.key < $1.key }).enumerated() {
            guard let constraint = desc.multiArrayConstraint else {
                throw NSError(domain: "mbv3", code: 1, userInfo: [NSLocalizedDescriptionKey:
                    "input \(name) is not a multi-array (image inputs are not supported by this benchmark)"])
            }
            let array = try MLMultiArray(shape: constraint.shape, dataType: .float32)
            let pointer = array.dataPointer.bindMemory(to: Float32.self, capacity: array.count)
            for j in 0..<array.count {
                pointer[j] = Float32(Double((j * 7919 + 13 * i) % 255) / 127.5 - 1.0)
            }
            features[name] = MLFeatureValue(multiArray: array)
        }
        return try MLDictionaryFeatureProvider(dictionary: features)
    }

    static func summarize(_ output: MLFeatureProvider) -> [String: Any] {
        guard let name = output.featureNames.sorted().first,
              let array = output.featureValue(for: name)?.multiArrayValue else { return [:] }
        var sum = 0.0, best = -Double.infinity, argmax = 0
        for j in 0..<array.count {
            let v = array[j].doubleValue
            sum += v
            if v > best { best = v; argmax = j }
        }
        return ["name": name, "sum": sum, "argmax": argmax, "count": array.count]
    }

    static func time(_ unitName: String, compiled: URL, config: BenchConfig) -> [String: Any] {
        guard let units = computeUnits(unitName) else {
            return ["compute_units": unitName, "error": "unknown compute unit"]
        }
        var rounds: [[String: Any]] = []
        var output: [String: Any] = [:]
        do {
            for _ in 0..<config.rounds {
                let modelConfig = MLModelConfiguration()
                modelConfig.computeUnits = units
                var t0 = nowMs()
                let model = try MLModel(contentsOf: compiled, configuration: modelConfig)
                let loadMs = nowMs() - t0
                let input = try syntheticInputs(model.modelDescription)
                t0 = nowMs()
                var result = try model.prediction(from: input)
                let firstMs = nowMs() - t0
                for _ in 0..<config.warmup { result = try model.prediction(from: input) }
                var latencies: [Double] = []
                for _ in 0..<config.iterations {
                    t0 = nowMs()
                    result = try model.prediction(from: input)
                    latencies.append(nowMs() - t0)
                }
                output = summarize(result)
                rounds.append(["load_ms": loadMs, "first_inference_ms": firstMs, "latencies_ms": latencies])
            }
        } catch {
            return ["compute_units": unitName, "error": "\(error)"]
        }
        return ["compute_units": unitName, "error": NSNull(), "rounds": rounds, "output": output]
    }

    /// Runs everything and writes the JSON atomically; returns it too.
    @discardableResult
    public static func run(_ config: BenchConfig) -> [String: Any] {
        #if targetEnvironment(simulator)
        let simulator = true
        #else
        let simulator = false
        #endif
        var doc: [String: Any] = [
            "schema": "mbv3-ios-bench/1",
            "app": ["version": Bundle.main.infoDictionary?["CFBundleShortVersionString"] ?? "dev"],
            "model": config.modelURL.lastPathComponent,
            "error": NSNull(),
        ]
        var device: [String: Any] = [
            "model": machine(), "name": ProcessInfo.processInfo.hostName,
            "os": ProcessInfo.processInfo.operatingSystemVersionString, "simulator": simulator,
            "thermal_state": thermalState(), "low_power_mode": ProcessInfo.processInfo.isLowPowerModeEnabled,
            "cpus": ProcessInfo.processInfo.activeProcessorCount,
        ]
        do {
            let t0 = nowMs()
            let compiled = try MLModel.compileModel(at: config.modelURL)
            doc["compile_ms"] = nowMs() - t0
            doc["results"] = config.computeUnits.map { time($0, compiled: compiled, config: config) }
            try? FileManager.default.removeItem(at: compiled)
        } catch {
            doc["error"] = "cannot compile \(config.modelURL.lastPathComponent): \(error)"
            doc["results"] = []
        }
        device["thermal_state_after"] = thermalState()
        doc["device"] = device
        if let data = try? JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]) {
            try? data.write(to: config.outURL, options: .atomic)
        }
        return doc
    }
}
