"""App snippets for ONNX Runtime Mobile: Android (Kotlin, `ai.onnxruntime`) and iOS (Swift,
`onnxruntime-objc`). The preprocessing is generated from the same `Preprocessing` as every other
README (Kotlin: `export.snippets.kotlin`; Swift: `swift_tensor` here, since ORT takes a float
tensor rather than the pixel buffer Vision feeds Core ML)."""

from __future__ import annotations

from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.export import snippets
from mbv3_mobile.export.onnx.runtime import ORT_REPLAY


def _floats(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def swift_tensor(pre: Preprocessing) -> str:
    """CGImage -> normalised CHW floats: the reference's crop (as in the Kotlin snippet), then Core
    Graphics scales with high-quality (antialiased) interpolation: exact only up to resampling."""
    r = pre.resolution
    if pre.resize_shorter:
        s = pre.resize_shorter
        crop = f"""    // shorter side to {s} px, then the centre {r}x{r}: the same as cropping the centred square
    // of side shorter * {r} / {s}, then scaling it to {r}x{r}
    let side = Int((Double(min(picture.width, picture.height)) * {r}.0 / {s}.0).rounded())
    let square = picture.cropping(to: CGRect(x: (picture.width - side) / 2, y: (picture.height - side) / 2,
                                             width: side, height: side))!"""
    else:
        crop = "    let square = picture  // the whole picture, no crop (aspect ratio not kept)"
    return f"""```swift
import CoreGraphics

func preprocess(_ picture: CGImage) -> [Float] {{
    let size = {r}
{crop}
    var rgba = [UInt8](repeating: 0, count: size * size * 4)
    rgba.withUnsafeMutableBytes {{ buffer in
        let context = CGContext(data: buffer.baseAddress, width: size, height: size, bitsPerComponent: 8,
                                bytesPerRow: size * 4, space: CGColorSpaceCreateDeviceRGB(),
                                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
        context.interpolationQuality = .high
        context.draw(square, in: CGRect(x: 0, y: 0, width: size, height: size))
    }}
    let mean: [Float] = [{_floats(pre.mean)}]
    let std: [Float] = [{_floats(pre.std)}]
    var chw = [Float](repeating: 0, count: 3 * size * size)
    for i in 0..<(size * size) {{
        for c in 0..<3 {{ chw[c * size * size + i] = (Float(rgba[4 * i + c]) / 255 - mean[c]) / std[c] }}
    }}
    return chw  // 1x3x{r}x{r}, NCHW
}}
```"""


def kotlin(pre: Preprocessing, *, input_name: str, model: str, int8_model: str | None, threads: int, result: str,
           function: tuple[str, str] = ("classify", "String"),
           output: str = "(result[0].value as Array<FloatArray>)[0]") -> str:
    """Android: session options, the picture -> tensor -> output, and `result` (the task's
    expression of the output `logits`)."""
    r = pre.resolution
    int8 = (f"\n// {int8_model}: the int8 model for the CPU / XNNPACK EP (see the EP coverage below)"
            if int8_model else "")
    return f"""{snippets.kotlin(pre)}

```kotlin
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.nio.FloatBuffer

// build.gradle: implementation("com.microsoft.onnxruntime:onnxruntime-android:<version>"){int8}
val env = OrtEnvironment.getEnvironment()
val options = OrtSession.SessionOptions().apply {{
    addConfigEntry("{ORT_REPLAY}", "1")  // the CPU fusions saved in the .ort
    setIntraOpNumThreads({threads})  // the fastest count measured at export (README "Threads"); measure on your phones
    // With the XNNPACK EP, ORT advises giving the threads to XNNPACK and 1 to the CPU EP instead:
    // addXnnpack(mapOf("intra_op_num_threads" to "{threads}")); setIntraOpNumThreads(1)
}}
val session = env.createSession(context.assets.open("{model}").readBytes(), options)
val labels = context.assets.open("labels.txt").bufferedReader().readLines()

fun {function[0]}(picture: Bitmap): {function[1]} {{
    OnnxTensor.createTensor(env, FloatBuffer.wrap(preprocess(picture)), longArrayOf(1, 3, {r}, {r})).use {{ x ->
        session.run(mapOf("{input_name}" to x)).use {{ result ->
            val logits = {output}
            return {result}
        }}
    }}
}}
```"""


def swift(pre: Preprocessing, *, input_name: str, output_name: str, model: str, threads: int, result: str,
          function: tuple[str, str] = ("classify", "Int")) -> str:
    """iOS: ORT with the Core ML EP, the picture -> tensor -> output, and `result` (the task's
    expression of the output `logits`)."""
    r = pre.resolution
    stem, _, ext = model.rpartition(".")
    return f"""{swift_tensor(pre)}

```swift
import onnxruntime_objc  // pod 'onnxruntime-objc' (or the onnxruntime-swift-package-manager package)

let env = try ORTEnv(loggingLevel: .warning)
let options = try ORTSessionOptions()
try options.addConfigEntry(withKey: "{ORT_REPLAY}", value: "1")  // the CPU fusions saved in the .ort
try options.setIntraOpNumThreads({threads})  // for what runs on the CPU EP: the count measured at export (README "Threads")
let coreML = ORTCoreMLExecutionProviderOptions()
coreML.createMLProgram = true  // MLProgram (iOS 15+); false: NeuralNetwork. Both take the whole graph (see below)
try options.appendCoreMLExecutionProvider(with: coreML)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{stem}", ofType: "{ext}")!,
                             sessionOptions: options)

func {function[0]}(_ picture: CGImage) throws -> {function[1]} {{
    var chw = preprocess(picture)
    let x = try ORTValue(tensorData: NSMutableData(bytes: &chw, length: chw.count * MemoryLayout<Float>.size),
                         elementType: .float, shape: [1, 3, {r}, {r}])
    let out = try session.run(withInputs: ["{input_name}": x], outputNames: ["{output_name}"], runOptions: nil)
    let logits = (try out["{output_name}"]!.tensorData() as Data).withUnsafeBytes {{ Array($0.bindMemory(to: Float.self)) }}
    return {result}
}}
```"""
