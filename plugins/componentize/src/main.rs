//! `causeway-componentize`: the last step of building a plugin.
//!
//! In: a core wasm module built by rustc from a crate using wit-bindgen (its
//! `component-type:*` custom sections say which WIT world it implements), or a
//! component already (the `wasm32-wasip2` target makes those).
//! Out: a component, checked against the world of `wit/plugin.wit` the plugin
//! claims to export, so a plugin that does not fit the gateway fails at build
//! time rather than at load time.
//!
//! ```text
//! causeway-componentize --wit WIT_DIR --world NAME IN.wasm [-o OUT.wasm] [--allow-wasi] [--print-wit]
//! ```
//!
//! Without `-o` it only checks. It prints one line: the component's size, what
//! it imports and what it exports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use wit_component::{ComponentEncoder, DecodedWasm, WitPrinter};
use wit_parser::{Resolve, WorldId, WorldItem, WorldKey};

const USAGE: &str = "usage: causeway-componentize --wit WIT_DIR --world NAME IN.wasm [-o OUT.wasm] [--allow-wasi] [--print-wit]

  --wit DIR      the WIT package the plugin must fit (the repository's wit/)
  --world NAME   the world it must export: record-filter, acl-mapper or router
  IN.wasm        a core module from wit-bindgen, or a component
  -o OUT.wasm    write the component there (otherwise only check IN.wasm)
  --allow-wasi   accept imports of wasi:* interfaces (wasm32-wasip2 builds);
                 the gateway must then provide them
  --print-wit    print the component's world as WIT";

struct Args {
    wit: PathBuf,
    world: String,
    input: PathBuf,
    output: Option<PathBuf>,
    allow_wasi: bool,
    print_wit: bool,
}

fn parse_args() -> Result<Args> {
    let mut wit = None;
    let mut world = None;
    let mut input = None;
    let mut output = None;
    let mut allow_wasi = false;
    let mut print_wit = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = |name: &str| {
            args.next()
                .map(PathBuf::from)
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--wit" => wit = Some(value("--wit")?),
            "--world" => world = Some(value("--world")?.to_string_lossy().into_owned()),
            "-o" | "--output" => output = Some(value("-o")?),
            "--allow-wasi" => allow_wasi = true,
            "--print-wit" => print_wit = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}"),
            _ if input.is_none() => input = Some(PathBuf::from(arg)),
            _ => bail!("more than one input: {arg}"),
        }
    }
    Ok(Args {
        wit: wit.context("--wit is required")?,
        world: world.context("--world is required")?,
        input: input.context("an input .wasm is required")?,
        output,
        allow_wasi,
        print_wit,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("causeway-componentize: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("causeway-componentize: {}: {e:#}", args.input.display());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let input =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let component = if wasmparser_is_component(&input) {
        input
    } else {
        ComponentEncoder::default()
            .module(&input)
            .context("reading the module's wit-bindgen metadata")?
            .validate(true)
            .encode()
            .context("encoding the component")?
    };

    let summary = check(
        &args.wit,
        &args.world,
        &component,
        args.allow_wasi,
        args.print_wit,
    )?;

    if let Some(out) = &args.output {
        write_atomically(out, &component)?;
    }
    println!(
        "{}: {} bytes, world {}; imports [{}]; exports [{}]",
        args.output.as_deref().unwrap_or(&args.input).display(),
        component.len(),
        args.world,
        summary.imports.join(", "),
        summary.exports.join(", "),
    );
    Ok(())
}

/// The component's own world, as decoded from its bytes.
struct Summary {
    imports: Vec<String>,
    exports: Vec<String>,
}

/// Checks that `component` can stand wherever the gateway expects a component
/// of `world` (wit-component's `targets`: it imports nothing else and exports
/// everything, with the same types).
fn check(
    wit_dir: &Path,
    world: &str,
    component: &[u8],
    allow_wasi: bool,
    print_wit: bool,
) -> Result<Summary> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_path(wit_dir)
        .with_context(|| format!("reading {}", wit_dir.display()))?;
    let expected = resolve
        .select_world(&[pkg], Some(world))
        .with_context(|| format!("no world `{world}` in {}", wit_dir.display()))?;

    let DecodedWasm::Component(decoded, decoded_world) =
        wit_component::decode(component).context("decoding the component")?
    else {
        bail!("not a component but a WIT package");
    };
    // Interfaces and functions; type imports (a world's `use`) are not worth a line.
    let names = |items: &mut dyn Iterator<Item = (&WorldKey, &WorldItem)>| {
        items
            .filter(|(_, item)| !matches!(item, WorldItem::Type(_)))
            .map(|(k, _)| decoded.name_world_key(k))
            .collect::<Vec<_>>()
    };
    let imports = names(&mut decoded.worlds[decoded_world].imports.iter());
    let exports = names(&mut decoded.worlds[decoded_world].exports.iter());
    if print_wit {
        // Before the verdict, so a component that does not fit can be read.
        let mut printer = WitPrinter::default();
        let root = decoded.worlds[decoded_world]
            .package
            .context("decoded world has no package")?;
        let nested: Vec<_> = decoded
            .packages
            .iter()
            .map(|(id, _)| id)
            .filter(|id| *id != root)
            .collect();
        printer.print(&decoded, root, &nested)?;
        println!("{}", printer.output);
    }
    let wasi: Vec<&String> = imports.iter().filter(|n| n.starts_with("wasi:")).collect();
    if !wasi.is_empty() && !allow_wasi {
        bail!(
            "the component imports WASI ({}); build for wasm32-unknown-unknown, or pass --allow-wasi \
             if the gateway provides WASI",
            wasi.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let target = if wasi.is_empty() {
        expected
    } else {
        with_wasi_imports(&mut resolve, expected, decoded, decoded_world)?
    };
    wit_component::targets(&resolve, target, component).with_context(|| {
        format!(
            "the component does not fit world `{world}` of {} (another world? several world \
             features of causeway-plugin-sdk enabled at once? build each plugin on its own, \
             `cargo build -p NAME`; --print-wit shows what the component has)",
            wit_dir.display()
        )
    })?;
    Ok(Summary { imports, exports })
}

/// The expected world plus the component's `wasi:*` imports, for checking a
/// wasm32-wasip2 build.
fn with_wasi_imports(
    resolve: &mut Resolve,
    expected: WorldId,
    decoded: Resolve,
    decoded_world: WorldId,
) -> Result<WorldId> {
    let wasi_keys: Vec<WorldKey> = decoded.worlds[decoded_world]
        .imports
        .keys()
        .filter(|k| decoded.name_world_key(k).starts_with("wasi:"))
        .cloned()
        .collect();
    let remap = resolve
        .merge(decoded)
        .context("merging the component's WIT")?;
    let merged = remap.map_world(decoded_world, None)?;
    let mut world = resolve.worlds[expected].clone();
    world.name = format!("{}-with-wasi", world.name);
    for key in wasi_keys {
        let key = match key {
            WorldKey::Interface(id) => WorldKey::Interface(remap.map_interface(id, None)?),
            name => name,
        };
        let item = resolve.worlds[merged]
            .imports
            .get(&key)
            .cloned()
            .context("lost a WASI import while merging")?;
        world.imports.insert(key, item);
    }
    Ok(resolve.worlds.alloc(world))
}

/// A component's header has layer 1; a core module's has layer 0.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
