//! A non-executing walk over the pickle of a zip `torch.save` file (its `data.pkl`) that
//! lists every tensor: dotted name, storage class and key, offset, shape and stride.
//!
//! Why our own walker beside `pytorch-reader` (the main path, see [`super::pytorch`]): that
//! crate refuses the whole file when one storage has a type it cannot load, such as a
//! complex64 tensor's `torch.ComplexFloatStorage`, so nothing else in the file could be
//! read or even listed. A listing needs no element types: this walker takes the opcodes
//! `torch.save` emits (protocols 2 to 5), builds dicts, lists and tuples, and records each
//! `torch._utils._rebuild_tensor*` call; the caller loads the tensors whose types it knows
//! and lists the others as unreadable. Nothing is imported or run. Any other call gives an
//! opaque value, and an object handed tensor data by its call or its state (a full-model
//! save's modules, a sparse tensor) is an error rather than a tensor silently lost.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;

/// One tensor the pickle builds.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// Its path from the root dict: dict keys and list/tuple indices joined with `.`, as
    /// `pytorch-reader` names tensors.
    pub name: String,
    /// The storage class (`FloatStorage`, `ComplexFloatStorage`, `UntypedStorage`, ...).
    pub storage_type: String,
    /// The storage's key: its bytes are the archive's `data/<key>`.
    pub key: String,
    /// The storage's element count as the pickle declares it (bytes for `UntypedStorage`).
    pub storage_numel: usize,
    /// The element type a `_rebuild_tensor_v3` call names (`uint16`, `float8_e4m3fn`),
    /// which goes with an untyped storage.
    pub dtype: Option<String>,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The tensors of the dict at the root of `pickle`, in the pickle's order. A malformed or
/// truncated pickle is an error saying where.
pub fn scan(pickle: &[u8]) -> Result<Vec<TensorRef>, String> {
    let mut m = Machine::default();
    let root = m.run(pickle)?;
    m.tensors_under(root)
}

/// Dict/list/tuple levels the listing descends before giving up (a cycle, or a hostile file).
const MAX_DEPTH: usize = 1000;

/// Values the listing visits before giving up: a memoized container fetched many times is
/// one object in the pickle but is walked once per path to it.
const MAX_VISITS: usize = 10_000_000;

/// A value on the stack or in the memo. Containers live in [`Machine::nodes`], so fetching
/// one from the memo shares it as Python does, instead of copying it.
#[derive(Clone, Copy, Debug)]
enum Value {
    None,
    Int(i64),
    /// A scalar the listing has no use for (float, bool, bytes, a wide int).
    Other,
    Node(usize),
}

#[derive(Debug)]
enum Node {
    Str(String),
    Global {
        module: String,
        name: String,
    },
    Tuple(Vec<Value>),
    /// Lists and sets.
    List(Vec<Value>),
    Dict(IndexMap<String, Value>),
    Storage {
        type_name: String,
        key: String,
        numel: usize,
    },
    /// A tensor; named when the tree is walked.
    Tensor(TensorRef),
    /// What an uninterpreted call returned.
    Opaque,
}

#[derive(Default)]
struct Machine {
    nodes: Vec<Node>,
    stack: Vec<Value>,
    /// Stack heights at each open MARK, innermost last.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

/// The pickle's bytes with a read position.
struct Input<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let rest = &self.buf[self.pos..];
        if n > rest.len() {
            return Err(format!(
                "truncated: {n} bytes wanted at byte {}, {} left",
                self.pos,
                rest.len()
            ));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    /// A length prefix of `N` bytes (little-endian).
    fn size<const N: usize>(&mut self) -> Result<usize, String> {
        let mut b = [0; 8];
        b[..N].copy_from_slice(&self.array::<N>()?);
        usize::try_from(u64::from_le_bytes(b)).map_err(|_| "length overflows usize".to_string())
    }

    /// Bytes up to the next newline (GLOBAL's module and name).
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| format!("truncated: no end of line after byte {}", self.pos))?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

impl Machine {
    /// Runs the pickle to its STOP and returns the value it leaves.
    fn run(&mut self, pickle: &[u8]) -> Result<Value, String> {
        let mut input = Input {
            buf: pickle,
            pos: 0,
        };
        loop {
            let at = input.pos;
            let Some(&op) = pickle.get(at) else {
                return Err(format!("truncated: ends at byte {at} before STOP"));
            };
            input.pos += 1;
            let stop = self
                .step(op, &mut input)
                .map_err(|e| format!("opcode {op:#04x} at byte {at}: {e}"))?;
            if let Some(root) = stop {
                return Ok(root);
            }
        }
    }

    /// Executes one opcode; `Some` with the result at STOP.
    fn step(&mut self, op: u8, input: &mut Input<'_>) -> Result<Option<Value>, String> {
        match op {
            // PROTO: torch.save writes protocol 2; later ones differ only in opcodes.
            0x80 => match input.u8()? {
                2..=5 => {}
                v => return Err(format!("pickle protocol {v} (2 to 5 are read)")),
            },
            0x95 => {
                input.take(8)?; // FRAME: a size hint
            }
            b'.' => return self.pop().map(Some),
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.stack.push(top);
            }
            b'}' => self.push_node(Node::Dict(IndexMap::new())),
            b']' | 0x8f => self.push_node(Node::List(Vec::new())), // EMPTY_LIST, EMPTY_SET
            b')' => self.push_node(Node::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push_node(Node::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84); // TUPLE1, TUPLE2, TUPLE3
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_node(Node::Tuple(items));
            }
            0x91 => {
                let items = self.pop_mark()?; // FROZENSET
                self.push_node(Node::List(items));
            }
            b'q' => {
                let i = input.u8()?;
                self.memoize(u64::from(i))?;
            }
            b'r' => {
                let i = input.u32()?;
                self.memoize(u64::from(i))?;
            }
            0x94 => self.memoize(self.memo.len() as u64)?, // MEMOIZE
            b'h' => {
                let i = input.u8()?;
                self.fetch(u64::from(i))?;
            }
            b'j' => {
                let i = input.u32()?;
                self.fetch(u64::from(i))?;
            }
            b'X' | b'T' => {
                let n = input.size::<4>()?; // BINUNICODE, BINSTRING
                self.push_str(input.take(n)?);
            }
            0x8c | b'U' => {
                let n = input.size::<1>()?; // SHORT_BINUNICODE, SHORT_BINSTRING
                self.push_str(input.take(n)?);
            }
            0x8d => {
                let n = input.size::<8>()?; // BINUNICODE8
                self.push_str(input.take(n)?);
            }
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8 (numpy scalars, for one).
            b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    b'B' => input.size::<4>()?,
                    b'C' => input.size::<1>()?,
                    _ => input.size::<8>()?,
                };
                input.take(n)?;
                self.stack.push(Value::Other);
            }
            b'c' => {
                let module = input.line()?;
                let name = input.line()?;
                self.push_node(Node::Global { module, name });
            }
            0x93 => {
                let name = self.pop_str("STACK_GLOBAL name")?;
                let module = self.pop_str("STACK_GLOBAL module")?;
                self.push_node(Node::Global { module, name });
            }
            b'J' => self
                .stack
                .push(Value::Int(i32::from_le_bytes(input.array()?).into())),
            b'K' => self.stack.push(Value::Int(input.u8()?.into())),
            b'M' => self
                .stack
                .push(Value::Int(u16::from_le_bytes(input.array()?).into())),
            0x8a => {
                let n = input.size::<1>()?; // LONG1
                self.stack.push(long(input.take(n)?));
            }
            0x8b => {
                let n = input.size::<4>()?; // LONG4
                self.stack.push(long(input.take(n)?));
            }
            b'G' => {
                input.take(8)?; // BINFLOAT
                self.stack.push(Value::Other);
            }
            b'N' => self.stack.push(Value::None),
            0x88 | 0x89 => self.stack.push(Value::Other), // NEWTRUE, NEWFALSE
            b'Q' => {
                let pid = self.pop()?; // BINPERSID
                let storage = self.storage(pid)?;
                self.push_node(storage);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args)?;
                self.stack.push(v);
            }
            0x81 => {
                let args = self.pop()?; // NEWOBJ: cls.__new__(cls, *args)
                let cls = self.pop()?;
                let v = self.opaque(cls, &[args])?;
                self.stack.push(v);
            }
            0x92 => {
                let kwargs = self.pop()?; // NEWOBJ_EX
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.opaque(cls, &[args, kwargs])?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.top()?;
                self.build(obj, state)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, items)?;
            }
            b'a' => {
                let item = self.pop()?;
                let target = self.top()?;
                self.append(target, vec![item])?;
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?; // APPENDS, ADDITEMS
                let target = self.top()?;
                self.append(target, items)?;
            }
            _ => return Err("unknown opcode, or one torch.save does not write".into()),
        }
        Ok(None)
    }

    fn push_node(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(Value::Node(self.nodes.len() - 1));
    }

    fn push_str(&mut self, bytes: &[u8]) {
        self.push_node(Node::Str(String::from_utf8_lossy(bytes).into_owned()));
    }

    fn mark_on_top(&self) -> bool {
        self.marks.last() == Some(&self.stack.len())
    }

    fn top(&self) -> Result<Value, String> {
        match self.stack.last() {
            Some(&v) if !self.mark_on_top() => Ok(v),
            _ => Err("stack empty".into()),
        }
    }

    fn pop(&mut self) -> Result<Value, String> {
        let v = self.top()?;
        self.stack.pop();
        Ok(v)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK")?;
        Ok(self.stack.split_off(mark))
    }

    fn memoize(&mut self, i: u64) -> Result<(), String> {
        let v = self.top()?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn fetch(&mut self, i: u64) -> Result<(), String> {
        let v = *self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo {i} is not set"))?;
        self.stack.push(v);
        Ok(())
    }

    fn node(&self, v: Value) -> Option<&Node> {
        match v {
            Value::Node(i) => self.nodes.get(i),
            _ => None,
        }
    }

    fn pop_str(&mut self, what: &str) -> Result<String, String> {
        match self.pop().map(|v| self.node(v)) {
            Ok(Some(Node::Str(s))) => Ok(s.clone()),
            _ => Err(format!("{what} is not a str")),
        }
    }

    fn tuple(&self, v: Value, what: &str) -> Result<&[Value], String> {
        match self.node(v) {
            Some(Node::Tuple(items)) => Ok(items),
            _ => Err(format!("{what} is not a tuple")),
        }
    }

    fn index(&self, v: Value, what: &str) -> Result<usize, String> {
        match v {
            Value::Int(i) => usize::try_from(i).map_err(|_| format!("{what} {i} is negative")),
            _ => Err(format!("{what} is not an int")),
        }
    }

    fn dims(&self, v: Value, what: &str) -> Result<Vec<usize>, String> {
        match self.node(v) {
            Some(Node::Tuple(items) | Node::List(items)) => {
                items.iter().map(|&d| self.index(d, what)).collect()
            }
            _ => Err(format!("{what} is not a tuple")),
        }
    }

    /// A dict key as a name part: a str, or an int written in decimal.
    fn key(&self, v: Value) -> Result<String, String> {
        match (v, self.node(v)) {
            (Value::Int(i), _) => Ok(i.to_string()),
            (_, Some(Node::Str(s))) => Ok(s.clone()),
            _ => Err("a dict key that is neither a str nor an int".into()),
        }
    }

    /// `module.name` of a global, for messages.
    fn callee(&self, v: Value) -> String {
        match self.node(v) {
            Some(Node::Global { module, name }) => format!("{module}.{name}"),
            _ => "a computed callable".into(),
        }
    }

    fn is_global(&self, v: Value, module: &str, name: &str) -> bool {
        matches!(self.node(v), Some(Node::Global { module: m, name: n }) if m == module && n == name)
    }

    /// Whether a storage or tensor is reachable from `v`.
    fn holds_tensor(&self, v: Value) -> bool {
        let mut seen = HashSet::new();
        let mut todo = vec![v];
        while let Some(v) = todo.pop() {
            let Value::Node(i) = v else { continue };
            if !seen.insert(i) {
                continue;
            }
            match &self.nodes[i] {
                Node::Storage { .. } | Node::Tensor(_) => return true,
                Node::Tuple(items) | Node::List(items) => todo.extend(items),
                Node::Dict(d) => todo.extend(d.values()),
                Node::Str(_) | Node::Global { .. } | Node::Opaque => {}
            }
        }
        false
    }

    /// The result of a call the listing does not interpret; an error if it is handed
    /// tensor data, which would otherwise vanish.
    fn opaque(&mut self, callable: Value, args: &[Value]) -> Result<Value, String> {
        if args.iter().any(|&a| self.holds_tensor(a)) {
            return Err(format!(
                "`{}` is handed tensor data: only dicts, lists and tuples of tensors are listed",
                self.callee(callable)
            ));
        }
        self.nodes.push(Node::Opaque);
        Ok(Value::Node(self.nodes.len() - 1))
    }

    /// A `('storage', storage_type, key, location, numel)` persistent id.
    fn storage(&self, pid: Value) -> Result<Node, String> {
        let fields = self.tuple(pid, "persistent id")?;
        let [tag, type_name, key, _location, numel, view @ ..] = fields else {
            return Err(format!("persistent id of {} fields", fields.len()));
        };
        if !matches!(self.node(*tag), Some(Node::Str(t)) if t == "storage") {
            return Err("persistent id is not a storage".into());
        }
        if !matches!(view, [] | [Value::None]) {
            return Err("a storage view (legacy files only)".into());
        }
        let type_name = match self.node(*type_name) {
            Some(Node::Global { name, .. } | Node::Str(name)) => name.clone(),
            _ => return Err("storage type is not a class".into()),
        };
        Ok(Node::Storage {
            type_name,
            key: self.key(*key)?,
            numel: self.index(*numel, "storage size")?,
        })
    }

    /// REDUCE: `callable(*args)`, interpreted for the calls that build containers and
    /// tensors.
    fn call(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        // _rebuild_from_type_v2(func, new_type, args, state): a tensor subclass is
        // func(*args); not applied recursively.
        if self.is_global(callable, "torch._tensor", "_rebuild_from_type_v2") {
            let a = self.tuple(args, "_rebuild_from_type_v2 arguments")?;
            let &[func, _new_type, inner, ref state @ ..] = a else {
                return Err("_rebuild_from_type_v2 takes at least 3 arguments".into());
            };
            if state.iter().any(|&s| self.holds_tensor(s)) {
                return Err("a tensor subclass whose state holds tensors".into());
            }
            return self.call_plain(func, inner);
        }
        self.call_plain(callable, args)
    }

    fn call_plain(&mut self, callable: Value, args: Value) -> Result<Value, String> {
        let Some(Node::Global { module, name }) = self.node(callable) else {
            return self.opaque(callable, &[args]);
        };
        let node = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => {
                let items = self.single_sequence(args, "OrderedDict")?;
                let mut dict = IndexMap::new();
                for item in items {
                    match self.node(item) {
                        Some(Node::Tuple(kv) | Node::List(kv)) if kv.len() == 2 => {
                            dict.insert(self.key(kv[0])?, kv[1]);
                        }
                        _ => return Err("OrderedDict item is not a (key, value) pair".into()),
                    }
                }
                Node::Dict(dict)
            }
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                Node::List(self.single_sequence(args, "set")?)
            }
            (
                "torch._utils",
                rebuild @ ("_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_tensor_v3"
                | "_rebuild_qtensor"),
            ) => Node::Tensor(self.tensor(rebuild, args)?),
            // _rebuild_parameter(data, requires_grad, hooks[, state]): the tensor is data.
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                let a = self.tuple(args, "_rebuild_parameter arguments")?;
                let [data, rest @ ..] = a else {
                    return Err("_rebuild_parameter without arguments".into());
                };
                if rest.iter().any(|&r| self.holds_tensor(r)) {
                    return Err("a parameter whose state holds tensors".into());
                }
                return Ok(*data);
            }
            _ => return self.opaque(callable, &[args]),
        };
        self.nodes.push(node);
        Ok(Value::Node(self.nodes.len() - 1))
    }

    /// The items of `f()` or `f(items)`.
    fn single_sequence(&self, args: Value, what: &str) -> Result<Vec<Value>, String> {
        match self.tuple(args, what)? {
            [] => Ok(Vec::new()),
            [seq] => match self.node(*seq) {
                Some(Node::Tuple(items) | Node::List(items)) => Ok(items.clone()),
                _ => Err(format!("{what} argument is not a list")),
            },
            _ => Err(format!("{what} takes one argument")),
        }
    }

    /// `rebuild(storage, storage_offset, size, stride, ...)`; `_rebuild_tensor_v3` names
    /// the element type as its 7th argument.
    fn tensor(&self, rebuild: &str, args: Value) -> Result<TensorRef, String> {
        let a = self.tuple(args, rebuild)?;
        let arity = if rebuild == "_rebuild_tensor_v3" {
            7
        } else {
            4
        };
        if a.len() < arity {
            return Err(format!(
                "{rebuild} takes at least {arity} arguments, got {}",
                a.len()
            ));
        }
        let Some(Node::Storage {
            type_name,
            key,
            numel,
        }) = self.node(a[0])
        else {
            return Err(format!("{rebuild}: the first argument is not a storage"));
        };
        let dtype = match (arity, a.get(6).and_then(|&d| self.node(d))) {
            (4, _) => None,
            (_, Some(Node::Global { module, name })) if module == "torch" => Some(name.clone()),
            _ => return Err(format!("{rebuild}: the 7th argument is not a torch dtype")),
        };
        let shape = self.dims(a[2], "size")?;
        let stride = self.dims(a[3], "stride")?;
        if shape.len() != stride.len() {
            return Err(format!(
                "{rebuild}: size {shape:?} and stride {stride:?} differ in rank"
            ));
        }
        Ok(TensorRef {
            name: String::new(),
            storage_type: type_name.clone(),
            key: key.clone(),
            storage_numel: *numel,
            dtype,
            offset: self.index(a[1], "storage offset")?,
            shape,
            stride,
        })
    }

    /// BUILD: a dict's state is merged into it (an `OrderedDict`'s `_metadata`, as
    /// `pytorch-reader` does); other state must not hold tensors.
    fn build(&mut self, obj: Value, state: Value) -> Result<(), String> {
        if let (Value::Node(i), Some(Node::Dict(update))) = (obj, self.node(state))
            && matches!(self.nodes[i], Node::Dict(_))
        {
            let update = update.clone();
            if let Node::Dict(d) = &mut self.nodes[i] {
                d.extend(update);
            }
            return Ok(());
        }
        if self.holds_tensor(state) {
            return Err("BUILD state holds tensors".into());
        }
        Ok(())
    }

    /// SETITEM(S): into a dict; into anything else only if no tensor would be lost.
    fn set_items(&mut self, target: Value, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("dict items do not come in pairs".into());
        }
        match target {
            Value::Node(i) if matches!(self.nodes[i], Node::Dict(_)) => {
                let pairs = items
                    .chunks_exact(2)
                    .map(|kv| Ok((self.key(kv[0])?, kv[1])))
                    .collect::<Result<Vec<_>, String>>()?;
                if let Node::Dict(d) = &mut self.nodes[i] {
                    d.extend(pairs);
                }
                Ok(())
            }
            _ => self.unkept(&items, "items set on an object that is not a dict"),
        }
    }

    /// APPEND(S), ADDITEMS: onto a list or set; onto anything else only if no tensor would
    /// be lost.
    fn append(&mut self, target: Value, items: Vec<Value>) -> Result<(), String> {
        match target {
            Value::Node(i) if matches!(self.nodes[i], Node::List(_)) => {
                if let Node::List(list) = &mut self.nodes[i] {
                    list.extend(items);
                }
                Ok(())
            }
            _ => self.unkept(&items, "items appended to an object that is not a list"),
        }
    }

    /// Values dropped because the listing does not model where they go.
    fn unkept(&self, items: &[Value], what: &str) -> Result<(), String> {
        if items.iter().any(|&v| self.holds_tensor(v)) {
            return Err(format!("tensors among {what}"));
        }
        Ok(())
    }

    /// Every tensor under the root dict, named by its path.
    fn tensors_under(&self, root: Value) -> Result<Vec<TensorRef>, String> {
        if !matches!(self.node(root), Some(Node::Dict(_))) {
            return Err("the pickle's root is not a dict".into());
        }
        let mut out = Vec::new();
        let mut todo = vec![(root, String::new(), 0)];
        let mut visits = 0;
        while let Some((v, path, depth)) = todo.pop() {
            visits += 1;
            if visits > MAX_VISITS || depth > MAX_DEPTH {
                return Err(format!(
                    "more than {MAX_VISITS} values or {MAX_DEPTH} levels of nesting to list"
                ));
            }
            let join = |part: &str| match path.as_str() {
                "" => part.to_string(),
                p => format!("{p}.{part}"),
            };
            let children: Vec<(Value, String)> = match self.node(v) {
                Some(Node::Dict(d)) => d.iter().map(|(k, &v)| (v, join(k))).collect(),
                Some(Node::Tuple(items) | Node::List(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (v, join(&i.to_string())))
                    .collect(),
                Some(Node::Tensor(t)) => {
                    out.push(TensorRef {
                        name: path,
                        ..t.clone()
                    });
                    continue;
                }
                _ => continue,
            };
            // Reversed onto the stack, so they come off in the pickle's order.
            todo.extend(children.into_iter().rev().map(|(v, p)| (v, p, depth + 1)));
        }
        Ok(out)
    }
}

/// A LONG1/LONG4 payload: little-endian two's complement.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::Other;
    }
    let fill = match bytes.last() {
        Some(&b) if b & 0x80 != 0 => 0xff,
        _ => 0,
    };
    let mut b = [fill; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"w": _rebuild_tensor_v2(storage, 1, (2, 2), (1, 2), False, OrderedDict()),
    ///   "n": [3, -2]}` as torch.save's pickler writes it (protocol 2), the storage a
    /// complex64 one and the tensor a transposed view at offset 1.
    fn state_dict() -> Vec<u8> {
        let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01".to_vec();
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x02(");
        p.extend(b"(X\x07\x00\x00\x00storageq\x03ctorch\nComplexFloatStorage\nq\x04");
        p.extend(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x05tQ");
        p.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rtq\x05R");
        p.extend(b"X\x01\x00\x00\x00n]q\x06(K\x03\x8a\x01\xfeeu.");
        p
    }

    #[test]
    fn lists_a_tensor_of_any_storage_type() {
        let got = scan(&state_dict()).unwrap();
        assert_eq!(
            got,
            [TensorRef {
                name: "w".into(),
                storage_type: "ComplexFloatStorage".into(),
                key: "0".into(),
                storage_numel: 5,
                dtype: None,
                offset: 1,
                shape: vec![2, 2],
                stride: vec![1, 2],
            }]
        );
    }

    #[test]
    fn a_truncated_or_damaged_pickle_is_an_error_not_a_panic() {
        let p = state_dict();
        for n in 0..p.len() {
            let e = scan(&p[..n]).unwrap_err();
            assert!(e.contains("truncated"), "{n}: {e}");
        }
        let mut bad = p.clone();
        let at = bad.iter().position(|&b| b == b'Q').unwrap();
        bad[at] = 0xff;
        let e = scan(&bad).unwrap_err();
        assert!(e.contains(&format!("opcode 0xff at byte {at}")), "{e}");
    }

    proptest::proptest! {
        /// Damaged pickles are errors or listings, never a panic or a hang.
        #[test]
        fn damaged_pickles_never_panic(
            flips in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..4,
            ),
        ) {
            let mut p = state_dict();
            for (at, v) in flips {
                let i = at.index(p.len());
                p[i] = v;
            }
            let _ = scan(&p);
        }
    }

    #[test]
    fn tensors_handed_to_unknown_calls_are_an_error() {
        // {"x": mymod.Thing(<the tensor>)}
        let p = state_dict();
        let start = p.windows(2).position(|w| w == b"q\x01").unwrap() + 2;
        let end = p.windows(3).position(|w| w == b"tq\x05").unwrap() + 3;
        let mut q = p[..start].to_vec();
        q.extend(b"cmymod\nThing\n");
        q.extend(&p[start..end]);
        q.extend(b"R\x85Ru.");
        let e = scan(&q).unwrap_err();
        assert!(e.contains("`mymod.Thing` is handed tensor data"), "{e}");
    }
}
