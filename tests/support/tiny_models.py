"""Tiny, randomly initialised stand-ins for the Hugging Face models the tests name.

``build_models_dir(root)`` writes ``root/<hub name>/`` for each entry of ``HUB_NAMES``: a
complete model folder (config, safetensors weights, a tokenizer trained on the spot,
generation config where the architecture generates) that ``AutoTokenizer`` and the matching
``AutoModel*`` class load offline. Every model has a hidden size of 32 and two layers, so
that building, fine-tuning for a few steps and generating take seconds on a CPU.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartTokenizerFast,
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertTokenizerFast,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    MarianConfig,
    MarianMTModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

HUB_NAMES = {
    "marian": "Helsinki-NLP/opus-mt-en-es",
    "distilbert": "distilbert-base-uncased",
    "bart": "sshleifer/distilbart-xsum-12-1",
    "gpt2": "gpt2",
}

VOCAB_SIZE = 800
# Seeded into the character-level tokenizers so that text outside the corpus rarely maps to unk.
ALPHABET = [chr(c) for c in range(33, 127)] + list("áéíóúüñÁÉÍÓÚÜÑ¿¡")
HIDDEN = 32
HEADS = 2
FFN = 64

ENGLISH = (
    "I love SQL.",
    "I love databases and I love queries.",
    "While I wandered weak and weary, I found an old book.",
    "Once upon a midnight dreary, while I pondered, weak and weary.",
    "Quoth the raven, nevermore.",
    "The quick brown fox jumps over the lazy dog.",
    "The weather is nice today.",
    "It is raining in the city again.",
    "My favourite colour is blue.",
    "She reads a newspaper every morning.",
    "He drinks coffee with milk and sugar.",
    "We walked to the station after dinner.",
    "They are building a new bridge across the river.",
    "The children played football in the park.",
    "Where is the nearest hospital?",
    "How much does this ticket cost?",
    "Please close the window, it is cold.",
    "The train leaves at seven o'clock.",
    "Can you help me find my keys?",
    "I would like a table for two, please.",
    "The museum opens on Tuesday morning.",
    "Our teacher explained the lesson twice.",
    "The cat is sleeping on the warm sofa.",
    "A small boat sailed across the quiet lake.",
    "The mountains were covered with fresh snow.",
    "He forgot his umbrella at the office.",
    "Summer days are long and bright.",
    "The library is full of students studying for exams.",
    "Good morning, how are you?",
    "Thank you very much for your help.",
    "The server returned an error after the update.",
    "Select every row from the table where the price is high.",
    "The database stores customers, orders and products.",
    "Postgres is a reliable relational database.",
    "The query planner chose an index scan.",
    "A transaction either commits or rolls back.",
    "The model was trained on a small dataset.",
    "Machine learning models learn patterns from examples.",
    "The proxy forwards every message to the server.",
    "Translate this sentence into Spanish.",
    "Summarize the following article in one sentence.",
    "The network connection was slow this evening.",
    "She wrote a short program in Python.",
    "Our company hired three new engineers.",
    "The meeting was moved to Thursday afternoon.",
    "Prices rose sharply during the last quarter.",
    "The market closed higher on Friday.",
    "Scientists discovered a new species of frog.",
    "The president visited the flooded region.",
    "Local farmers expect a good harvest this year.",
    "The council approved a plan to repair the roads.",
    "Heavy storms caused power cuts across the county.",
    "The team won the championship after extra time.",
    "Fans celebrated in the streets until midnight.",
    "The airport will open a second runway next spring.",
    "Police arrested two men after the robbery.",
    "The hospital treated dozens of patients overnight.",
    "The school will close early because of the heat.",
    "A new study links sleep to better memory.",
    "The festival attracted thousands of visitors.",
    "This movie was absolutely wonderful.",
    "I loved every minute of this film.",
    "The acting was brilliant and the story was moving.",
    "What a beautiful and touching movie.",
    "The soundtrack is great and the photography is stunning.",
    "A clever, funny and warm comedy.",
    "One of the best films I have seen this year.",
    "The director did an excellent job.",
    "I would happily watch it again.",
    "The cast is charming and the script is sharp.",
    "This movie was terrible and boring.",
    "I hated the ending of this film.",
    "The plot made no sense at all.",
    "A dull, slow and predictable story.",
    "The acting was awful and the dialogue was worse.",
    "I fell asleep halfway through the movie.",
    "A complete waste of time and money.",
    "The jokes were not funny and the characters were flat.",
    "Avoid this film, it is a disaster.",
    "The special effects could not save the weak script.",
    "A bill to amend the Internal Revenue Code to extend the tax credit.",
    "A bill to provide funding for rural schools and libraries.",
    "To require the Secretary of Energy to report on grid security.",
    "A bill to establish a grant program for clean water.",
    "To amend title 38 to improve health care for veterans.",
    "This Act may be cited as the Safe Roads Act.",
    "The Secretary shall submit a report to Congress within one year.",
    "Amounts appropriated under this section shall remain available.",
    "A bill to prohibit the sale of personal data without consent.",
    "To direct the Administrator to issue rules on air quality.",
    "A bill to expand access to affordable housing.",
    "The term small business has the meaning given in section 3.",
    "A resolution recognizing the contributions of nurses.",
    "To authorize appropriations for fiscal years 2025 through 2029.",
    "A bill to reduce the cost of prescription drugs.",
    "Nothing in this Act shall be construed to limit existing rights.",
    "The amendments made by this section shall take effect immediately.",
    "A bill to protect consumers from unfair fees.",
    "To establish a commission on public transportation.",
    "Such sums as may be necessary are authorized to be appropriated.",
    "Deep into that darkness peering, long I stood there wondering.",
    "The stars shine brightly over the silent sea.",
    "Music fills the room with joy.",
    "Every journey begins with a single step.",
    "Knowledge is power and time is money.",
    "The garden smells of roses after the rain.",
    "Bread, cheese and apples make a simple lunch.",
    "He plays the guitar and sings old songs.",
    "The old house at the end of the street is empty.",
    "Learning a language takes patience and practice.",
    "What a great game that was!",
    "Wow, the view from the tower is amazing!",
    "Do you want tea or coffee?",
    "Insert a new row into the orders table.",
    "Update the customer's address and commit the change.",
    "Delete the old records before the backup runs.",
    "The index makes the search much faster.",
    "Join the two tables on the customer id.",
    "Count the number of orders per month.",
    "The function returns a list of numbers.",
    "Tokens are small pieces of words.",
    "The translation was accurate and fluent.",
    "A short summary helps busy readers.",
    "The article describes a new vaccine trial.",
    "Workers went on strike over pay and conditions.",
    "The bank cut interest rates for the first time in years.",
    "Tourists crowded the beaches during the holiday weekend.",
    "The film's villain was scary but the hero was boring.",
    "I laughed, I cried, and I want to see it again!",
    "Not bad, but not very good either.",
    "The second half of the movie drags on forever.",
    "An instant classic with a stunning final scene.",
    "The sequel is even better than the original.",
    "Honestly, the book was much better than the film.",
    "A bill to improve cybersecurity at federal agencies.",
    "To provide grants to states for wildfire prevention.",
    "A bill to increase the minimum wage over five years.",
    "To require disclosure of political advertising online.",
    "A bill to support small farms and local food markets.",
    "The committee held a hearing on the budget proposal.",
    "The Senate passed the bill by a narrow margin.",
    "My brother lives in a small village near the coast.",
    "We need eggs, flour and butter for the cake.",
    "The baby laughed when the dog barked.",
    "Turn left at the second traffic light.",
    "The concert was cancelled because of the rain.",
    "Her new phone has a very large screen.",
    "I usually go to bed before eleven.",
    "Yesterday we visited our grandparents.",
    "The river flows quietly through the valley.",
)

SPANISH = (
    "Me encanta SQL.",
    "Me encantan las bases de datos y me encantan las consultas.",
    "Mientras vagaba débil y cansado, encontré un libro viejo.",
    "Una vez, en una triste medianoche, mientras meditaba débil y cansado.",
    "Dijo el cuervo: nunca más.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Hoy hace buen tiempo.",
    "Está lloviendo otra vez en la ciudad.",
    "Mi color favorito es el azul.",
    "Ella lee el periódico cada mañana.",
    "Él toma café con leche y azúcar.",
    "Caminamos a la estación después de la cena.",
    "Están construyendo un puente nuevo sobre el río.",
    "Los niños jugaron al fútbol en el parque.",
    "¿Dónde está el hospital más cercano?",
    "¿Cuánto cuesta este billete?",
    "Por favor, cierra la ventana, hace frío.",
    "El tren sale a las siete en punto.",
    "¿Puedes ayudarme a encontrar mis llaves?",
    "Quisiera una mesa para dos, por favor.",
    "El museo abre el martes por la mañana.",
    "Nuestro profesor explicó la lección dos veces.",
    "El gato duerme en el sofá caliente.",
    "Un barco pequeño cruzó el lago tranquilo.",
    "Las montañas estaban cubiertas de nieve fresca.",
    "Olvidó su paraguas en la oficina.",
    "Los días de verano son largos y luminosos.",
    "La biblioteca está llena de estudiantes que preparan sus exámenes.",
    "Buenos días, ¿cómo estás?",
    "Muchas gracias por tu ayuda.",
    "El servidor devolvió un error después de la actualización.",
    "Selecciona todas las filas de la tabla donde el precio es alto.",
    "La base de datos guarda clientes, pedidos y productos.",
    "Postgres es una base de datos relacional fiable.",
    "El planificador eligió un recorrido por índice.",
    "Una transacción se confirma o se deshace.",
    "El modelo se entrenó con un conjunto de datos pequeño.",
    "Los modelos de aprendizaje automático aprenden patrones de los ejemplos.",
    "El proxy reenvía cada mensaje al servidor.",
    "Traduce esta frase al español.",
    "Resume el siguiente artículo en una frase.",
    "La conexión de red estaba lenta esta tarde.",
    "Ella escribió un programa corto en Python.",
    "Nuestra empresa contrató a tres ingenieros nuevos.",
    "La reunión se trasladó al jueves por la tarde.",
    "Los precios subieron mucho durante el último trimestre.",
    "El mercado cerró al alza el viernes.",
    "Los científicos descubrieron una nueva especie de rana.",
    "El presidente visitó la región inundada.",
    "Los agricultores esperan una buena cosecha este año.",
    "El ayuntamiento aprobó un plan para reparar las carreteras.",
    "Fuertes tormentas causaron apagones en toda la provincia.",
    "El equipo ganó el campeonato en la prórroga.",
    "Los aficionados celebraron en las calles hasta la medianoche.",
    "El aeropuerto abrirá una segunda pista la próxima primavera.",
    "La policía detuvo a dos hombres después del robo.",
    "El hospital atendió a decenas de pacientes durante la noche.",
    "La escuela cerrará temprano por el calor.",
    "Un nuevo estudio relaciona el sueño con una mejor memoria.",
    "El festival atrajo a miles de visitantes.",
    "Esta película fue absolutamente maravillosa.",
    "Me encantó cada minuto de esta película.",
    "La actuación fue brillante y la historia conmovedora.",
    "Qué película tan bonita y emotiva.",
    "La banda sonora es genial y la fotografía es impresionante.",
    "Una comedia inteligente, divertida y cálida.",
    "Una de las mejores películas que he visto este año.",
    "El director hizo un trabajo excelente.",
    "La volvería a ver con mucho gusto.",
    "El reparto es encantador y el guion es agudo.",
    "Esta película fue terrible y aburrida.",
    "Odié el final de esta película.",
    "La trama no tenía ningún sentido.",
    "Una historia lenta, sosa y previsible.",
    "La actuación fue horrible y los diálogos peores.",
    "Me quedé dormido a mitad de la película.",
    "Una pérdida total de tiempo y dinero.",
    "Los chistes no tenían gracia y los personajes eran planos.",
    "Evita esta película, es un desastre.",
    "Los efectos especiales no pudieron salvar un guion débil.",
    "Un proyecto de ley para modificar el código tributario y ampliar la deducción.",
    "Un proyecto de ley para financiar escuelas y bibliotecas rurales.",
    "Exigir al secretario de Energía un informe sobre la seguridad de la red.",
    "Un proyecto de ley para crear un programa de ayudas para el agua limpia.",
    "Modificar el título 38 para mejorar la atención sanitaria de los veteranos.",
    "Esta ley podrá citarse como la Ley de Carreteras Seguras.",
    "El secretario presentará un informe al Congreso en el plazo de un año.",
    "Las cantidades asignadas en esta sección seguirán disponibles.",
    "Un proyecto de ley para prohibir la venta de datos personales sin consentimiento.",
    "Ordenar al administrador que dicte normas sobre la calidad del aire.",
    "Un proyecto de ley para ampliar el acceso a la vivienda asequible.",
    "El término pequeña empresa tiene el significado dado en la sección 3.",
    "Una resolución que reconoce las contribuciones de las enfermeras.",
    "Autorizar asignaciones para los años fiscales 2025 a 2029.",
    "Un proyecto de ley para reducir el coste de los medicamentos recetados.",
    "Nada en esta ley se interpretará como una limitación de los derechos existentes.",
    "Las modificaciones de esta sección entrarán en vigor de inmediato.",
    "Un proyecto de ley para proteger a los consumidores de tarifas injustas.",
    "Crear una comisión sobre el transporte público.",
    "Se autoriza la asignación de las sumas que sean necesarias.",
    "Mirando fijamente en la oscuridad, largo tiempo permanecí allí, preguntándome.",
    "Las estrellas brillan sobre el mar silencioso.",
    "La música llena la habitación de alegría.",
    "Todo viaje empieza con un solo paso.",
    "El conocimiento es poder y el tiempo es oro.",
    "El jardín huele a rosas después de la lluvia.",
    "Pan, queso y manzanas son un almuerzo sencillo.",
    "Toca la guitarra y canta canciones antiguas.",
    "La casa vieja al final de la calle está vacía.",
    "Aprender un idioma requiere paciencia y práctica.",
    "¡Qué gran partido fue ese!",
    "¡Vaya, la vista desde la torre es increíble!",
    "¿Quieres té o café?",
    "Inserta una fila nueva en la tabla de pedidos.",
    "Actualiza la dirección del cliente y confirma el cambio.",
    "Borra los registros antiguos antes de la copia de seguridad.",
    "El índice hace que la búsqueda sea mucho más rápida.",
    "Une las dos tablas por el identificador del cliente.",
    "Cuenta el número de pedidos por mes.",
    "La función devuelve una lista de números.",
    "Los tokens son pequeños trozos de palabras.",
    "La traducción fue precisa y fluida.",
    "Un resumen corto ayuda a los lectores ocupados.",
    "El artículo describe un nuevo ensayo de vacunas.",
    "Los trabajadores hicieron huelga por el sueldo y las condiciones.",
    "El banco bajó los tipos de interés por primera vez en años.",
    "Los turistas llenaron las playas durante el puente.",
    "El villano de la película daba miedo, pero el héroe era aburrido.",
    "¡Me reí, lloré y quiero volver a verla!",
    "No está mal, pero tampoco es muy buena.",
    "La segunda mitad de la película se hace eterna.",
    "Un clásico instantáneo con una escena final impresionante.",
    "La secuela es todavía mejor que la original.",
    "Sinceramente, el libro era mucho mejor que la película.",
    "Un proyecto de ley para mejorar la ciberseguridad de las agencias federales.",
    "Conceder ayudas a los estados para prevenir incendios forestales.",
    "Un proyecto de ley para subir el salario mínimo en cinco años.",
    "Exigir que se publique la publicidad política en internet.",
    "Un proyecto de ley para apoyar las granjas pequeñas y los mercados locales.",
    "La comisión celebró una audiencia sobre el presupuesto.",
    "El Senado aprobó la ley por un margen estrecho.",
    "Mi hermano vive en un pueblo pequeño cerca de la costa.",
    "Necesitamos huevos, harina y mantequilla para el pastel.",
    "El bebé se rio cuando el perro ladró.",
    "Gira a la izquierda en el segundo semáforo.",
    "El concierto se canceló por la lluvia.",
    "Su teléfono nuevo tiene una pantalla muy grande.",
    "Normalmente me acuesto antes de las once.",
    "Ayer visitamos a nuestros abuelos.",
    "El río fluye tranquilo por el valle.",
)

CORPUS: tuple[str, ...] = ENGLISH + SPANISH


def build_models_dir(root: pathlib.Path, corpus: Sequence[str] | None = None) -> pathlib.Path:
    """Lay out root/<hub name>/ for each of the four models and return root."""
    texts = list(corpus) if corpus is not None else list(CORPUS)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _build_marian(root / HUB_NAMES["marian"], texts)
        _build_distilbert(root / HUB_NAMES["distilbert"], texts)
        _build_bart(root / HUB_NAMES["bart"], texts)
        _build_gpt2(root / HUB_NAMES["gpt2"], texts)
    return root


def _train(tokenizer: Tokenizer, trainer: trainers.Trainer, texts: Sequence[str]) -> Tokenizer:
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def _byte_level_bpe(texts: Sequence[str], special_tokens: list[str]) -> Tokenizer:
    """A GPT-2 style byte-level BPE tokenizer (no prefix space).

    The byte alphabet leaves out control characters other than tab and newlines, so that
    a random model cannot generate NUL, which PostgreSQL text cannot hold; such bytes in
    the input are dropped.
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    controls = {chr(b) for b in [*range(32), 127]} - set("\t\n\r")
    left_out = {byte_level.pre_tokenize_str(c)[0][0] for c in controls}
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=sorted(set(pre_tokenizers.ByteLevel.alphabet()) - left_out),
        show_progress=False,
    )
    return _train(tokenizer, trainer, texts)


def _save(folder: pathlib.Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    if model.config.vocab_size != len(tokenizer):
        raise AssertionError(f"{folder}: vocab_size {model.config.vocab_size} != {len(tokenizer)}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_marian(folder: pathlib.Path, texts: Sequence[str]) -> None:
    """SentencePiece-like BPE (``▁`` word prefix); ids: ``</s>`` 0, ``<unk>`` 1, ``<pad>`` 2."""
    eos, unk, pad = "</s>", "<unk>", "<pad>"
    backend = Tokenizer(models.BPE(unk_token=unk))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[eos, unk, pad],
        initial_alphabet=["▁", *ALPHABET],
        show_progress=False,
    )
    _train(backend, trainer, texts)
    eos_id, pad_id = backend.token_to_id(eos), backend.token_to_id(pad)
    backend.post_processor = TemplateProcessing(
        single=f"$A {eos}", pair=f"$A $B {eos}", special_tokens=[(eos, eos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=512,
    )
    config = MarianConfig(
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=512,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=None,
    )
    model = MarianMTModel(config)
    # As in the real model, never generate pad; min_new_tokens keeps a random model's
    # output from being empty.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bad_words_ids=[[pad_id]],
        min_new_tokens=1,
    )
    _save(folder, model, tokenizer)


def _wordpiece_vocab(texts: Sequence[str], specials: list[str]) -> dict[str, int]:
    """A WordPiece vocabulary learned deterministically from lowercased ``texts``.

    ``WordPieceTrainer`` numbers its ``##`` pieces in hash order, so its vocabulary changes
    from run to run. Instead, BPE (which is deterministic) learns pieces of words marked
    with a leading ``▁``: marked pieces start words, the others become ``##`` pieces.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = [
        f"▁{word}"
        for text in texts
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    ]
    alphabet = sorted({normalizer.normalize_str(c) for c in ALPHABET} - {""})
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=["▁", *alphabet], show_progress=False
    )
    _train(bpe, trainer, words)
    tokens = [*specials, *alphabet, *(f"##{c}" for c in alphabet)]
    for piece, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
        if piece != "▁":
            tokens.append(piece[1:] if piece.startswith("▁") else f"##{piece}")
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def _build_distilbert(folder: pathlib.Path, texts: Sequence[str]) -> None:
    """Lowercasing WordPiece; ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]`` are ids 0-4."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(_wordpiece_vocab(texts, specials), unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(specials)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = DistilBertTokenizerFast(tokenizer_object=backend, model_max_length=512)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=HIDDEN,
        hidden_dim=FFN,
        n_layers=2,
        n_heads=HEADS,
        max_position_embeddings=512,
        pad_token_id=backend.token_to_id("[PAD]"),
    )
    _save(folder, DistilBertForMaskedLM(config), tokenizer)


def _build_bart(folder: pathlib.Path, texts: Sequence[str]) -> None:
    """Byte-level BPE; ids as in BART: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3."""
    bos, pad, eos, unk, mask = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
    backend = _byte_level_bpe(texts, [bos, pad, eos, unk, mask])
    bos_id, pad_id, eos_id = (backend.token_to_id(t) for t in (bos, pad, eos))
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, bos_id), (eos, eos_id)],
    )
    tokenizer = BartTokenizerFast(tokenizer_object=backend, model_max_length=1024)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=HIDDEN,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=1024,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        decoder_start_token_id=eos_id,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    # A random BART repeats its decoder start token, eos; min_new_tokens stops it from
    # returning an empty summary.
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        decoder_start_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        min_new_tokens=1,
    )
    _save(folder, model, tokenizer)


def _build_gpt2(folder: pathlib.Path, texts: Sequence[str]) -> None:
    """Byte-level BPE with ``<|endoftext|>`` as bos, eos and unk, and no pad token."""
    eot = "<|endoftext|>"
    backend = _byte_level_bpe(texts, [eot])
    eot_id = backend.token_to_id(eot)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=backend,
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        model_max_length=1024,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=HIDDEN,
        n_layer=2,
        n_head=HEADS,
        n_inner=FFN,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id
    )
    _save(folder, model, tokenizer)
